// Command pause is the sandbox process of the test node's pods (scripts/build-kubenode.sh
// packs it into the pause image, so no registry is needed): it holds the pod's namespaces,
// reaps orphans as PID 1 and exits on SIGINT or SIGTERM. Test tool only: no Go ships in
// the bindha_rwx package.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

// Command clientgo-peer elects the named writer with client-go's tools/leaderelection,
// the way a Go programmer would wire it up, for the side-by-side benchmark
// (benchmarks/compare.py). Test tooling only; nothing here ships in bindha_rwx.
//
//	clientgo-peer --identity POD --lease NAME --namespace NS --kubeconfig FILE -- named -f -c conf
//
// Timings are client-go's documented defaults (LeaseDuration 15s, RenewDeadline 10s,
// RetryPeriod 2s) with ReleaseOnCancel, a LeaseLock, SIGTERM cancelling the context,
// and OnStoppedLeading exiting as in client-go's examples/leader-election.
// OnStartedLeading runs named through exec.CommandContext(ctx, ...), so named is
// killed when that context ends. One JSON line per event goes to stdout.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

var stdout sync.Mutex

// emit prints one event as a JSON line with the wall-clock time in seconds.
func emit(event string, fields map[string]any) {
	line := map[string]any{"ts": float64(time.Now().UnixNano()) / 1e9, "event": event}
	for k, v := range fields {
		line[k] = v
	}
	data, _ := json.Marshal(line)
	stdout.Lock()
	defer stdout.Unlock()
	fmt.Println(string(data))
}

// runNamed is OnStartedLeading: named lives as long as the leading context.
func runNamed(ctx context.Context, argv []string) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		emit("named_failed", map[string]any{"error": err.Error()})
		return
	}
	emit("named_started", map[string]any{"pid": cmd.Process.Pid})
	err := cmd.Wait()
	fields := map[string]any{"pid": cmd.Process.Pid}
	if err != nil {
		fields["error"] = err.Error()
	}
	emit("named_stopped", fields)
}

func main() {
	identity := flag.String("identity", "", "holder identity (the pod name)")
	lease := flag.String("lease", "", "Lease name")
	namespace := flag.String("namespace", "", "Lease namespace")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file")
	flag.Parse()
	argv := flag.Args()
	if *identity == "" || *lease == "" || *namespace == "" || len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "usage: clientgo-peer --identity ID --lease NAME --namespace NS [--kubeconfig FILE] -- named ...")
		os.Exit(2)
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	client := kubernetes.NewForConfigOrDie(config)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-signals
		emit("sigterm", nil)
		cancel()
	}()

	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: *lease, Namespace: *namespace},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: *identity},
	}
	emit("candidate", map[string]any{"identity": *identity})
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		ReleaseOnCancel: true,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				emit("leading", nil)
				runNamed(ctx, argv)
			},
			OnStoppedLeading: func() {
				emit("stopped_leading", nil)
				os.Exit(0)
			},
		},
	})
}

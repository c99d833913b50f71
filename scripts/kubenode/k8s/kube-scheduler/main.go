// Command kube-scheduler is the upstream kube-scheduler of Kubernetes v1.36.3, built for the test node of
// bindha-rwx (scripts/build-kubenode.sh). A binary of its own per component keeps the
// components' global flag and metric registrations apart. Test tool only: no Go ships
// in the bindha_rwx package.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	os.Exit(cli.Run(app.NewSchedulerCommand()))
}

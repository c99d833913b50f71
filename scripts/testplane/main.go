// Command testplane is the test control plane of bindha-rwx: a real
// kube-apiserver backed by an embedded etcd, and optionally a real
// kube-controller-manager, in one binary built from the Go module proxy.
//
// It is a test tool only; no Go code ships in the bindha_rwx package.
//
//	testplane apiserver --etcd-data-dir DIR --etcd-client-url URL --etcd-peer-url URL -- <kube-apiserver flags>
//	testplane controller-manager -- <kube-controller-manager flags>
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func splitArgs(args []string) (own, passed []string) {
	for i, a := range args {
		if a == "--" {
			return args[:i], args[i+1:]
		}
	}
	return args, nil
}

func startEtcd(dataDir, clientURL, peerURL string) (*embed.Etcd, error) {
	cu, err := url.Parse(clientURL)
	if err != nil {
		return nil, fmt.Errorf("--etcd-client-url: %w", err)
	}
	pu, err := url.Parse(peerURL)
	if err != nil {
		return nil, fmt.Errorf("--etcd-peer-url: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "testplane"
	cfg.Dir = dataDir
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Tests throw the data away: skip fsync so the control plane stays fast on slow disks.
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "error"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after 60s")
	}
}

func runAPIServer(args []string) int {
	own, passed := splitArgs(args)
	fs := flag.NewFlagSet("apiserver", flag.ExitOnError)
	dataDir := fs.String("etcd-data-dir", "", "etcd data directory (required)")
	clientURL := fs.String("etcd-client-url", "http://127.0.0.1:2379", "etcd client URL")
	peerURL := fs.String("etcd-peer-url", "http://127.0.0.1:2380", "etcd peer URL")
	_ = fs.Parse(own)
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "testplane apiserver: --etcd-data-dir is required")
		return 2
	}
	e, err := startEtcd(*dataDir, *clientURL, *peerURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testplane apiserver: etcd: %v\n", err)
		return 1
	}
	defer e.Close()
	cmd := apiserver.NewAPIServerCommand()
	cmd.SetArgs(append([]string{"--etcd-servers=" + *clientURL}, passed...))
	return cli.Run(cmd)
}

func runControllerManager(args []string) int {
	_, passed := splitArgs(args)
	cmd := controllermanager.NewControllerManagerCommand()
	cmd.SetArgs(passed)
	return cli.Run(cmd)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testplane apiserver|controller-manager [flags] -- [component flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "apiserver":
		os.Exit(runAPIServer(os.Args[2:]))
	case "controller-manager":
		os.Exit(runControllerManager(os.Args[2:]))
	default:
		fmt.Fprintf(os.Stderr, "testplane: unknown component %q (want apiserver or controller-manager)\n", os.Args[1])
		os.Exit(2)
	}
}

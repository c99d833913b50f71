//go:build tools

// Package tools pins containerd 2.x for scripts/build-kubenode.sh. `go install
// .../cmd/containerd@v2.x` is refused (containerd's go.mod has exclude directives), so
// this wrapper module requires containerd and builds its commands from here. Test tool
// only: no Go ships in the bindha_rwx package.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)

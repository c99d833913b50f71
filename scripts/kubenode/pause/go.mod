module bindha-rwx/kubenode-pause

go 1.26.0

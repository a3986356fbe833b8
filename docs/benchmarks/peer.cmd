exitwise bench peer runs/demo --connections 1,16 --duration 10 --rounds 2 --server-cpus 1 --client-cpus 0 --json docs/benchmarks/peer.json --markdown docs/benchmarks/peer.md

taskset -c 1 exitwise serve runs/demo --port 8090 --torch-threads 1    # in the background
exitwise bench http --url http://127.0.0.1:8090 --client wrk --client-cpus 0 --concurrency 1,16 --duration 10 --rounds 3 --dataset fashion-mnist --oracle docs/benchmarks/engine.json --json docs/benchmarks/http.json --markdown docs/benchmarks/http.md
exitwise bench http --url http://127.0.0.1:8090 --concurrency 4 --images-per-request 16 --requests 200 --duration 60 --rounds 2 --dataset fashion-mnist --json docs/benchmarks/http-batched.json --markdown docs/benchmarks/http-batched.md

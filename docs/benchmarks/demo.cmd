python scripts/demo_fresh.py --port 8090

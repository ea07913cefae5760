"""One runner per system; each defines `RUNS`, run through `bench.harness`."""

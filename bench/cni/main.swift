// weft-bench: ADD/DEL latency and throughput of the weft CNI plugin against the reference
// bridge + host-local plugins, in throwaway network namespaces. See bench/README.md.
WeftBench.main()

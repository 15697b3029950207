"""The two-party protocol: transport now; offline/online phases, client and server to come."""

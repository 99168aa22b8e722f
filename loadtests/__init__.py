"""Locust load tests of the bundle (REST and OIP gRPC); see loadtests/README.md and loadtests/locustfile.py."""

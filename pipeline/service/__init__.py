"""A running organism as a service: its control endpoint (a Unix socket by default, HTTP
on 127.0.0.1 with a token on request) and what the endpoint, the dashboard and the CLI
do through it. See ``service.control`` (the routes), ``service.operations`` (what they
do, through the organism's public API), ``service.address`` (where the socket lives) and
``service.client`` (the command line's side)."""

"""REST routes, thin: parse, call a service, answer."""

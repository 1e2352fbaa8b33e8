"""Assembly: what ``make_app`` puts together, each in its own home: providers by kind,
the router, the probe sender and the demo's simulator."""

"""Running as a service: sd_notify, SIGHUP reload and systemd credentials."""

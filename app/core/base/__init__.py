"""Below every stage: jobs (progress, cancel), paths, errors, the compute device, and the
child process that training runs in."""

"""Foundation I/O: run directories, the results table, pickle-free nested state."""

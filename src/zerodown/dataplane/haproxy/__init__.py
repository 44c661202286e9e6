"""HAProxy as zerodown's data plane: config rendered once, deploy steps through the runtime API."""

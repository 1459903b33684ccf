"""Pure code: the model, the state-dir files, the mission parser; no mount, no server."""

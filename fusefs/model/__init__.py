"""Pure domain code, no IO: the task space, the mission plan, the view state machine."""

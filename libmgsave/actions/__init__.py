"""One module per command, each the outline of that command, calling one layer down.

    check     validate the policy; warn about conflicts on the host
    plan      print what a pass would do
    status    every guest's state, saved image and last results
    shutdown  the shutdown pass
    boot      the boot pass

``inputs`` reads what they all need (policy, guests, records, plans); ``passes`` is the frame
the two passes share (lock, connections, summary). Each ``run_<command>(ctx)`` returns a typed
result (or None) from which ``cli`` computes the exit code.
"""

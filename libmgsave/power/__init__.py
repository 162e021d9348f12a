"""The UPS the host runs on, read through Network UPS Tools (NUT), one stage a module:

    nut          NUT's network protocol (upsd, TCP 3493): bounded, untrusted answers
    credentials  the upsd user's name and password, from a root-only file
    reading      pure: what the UPS said, each value checked (``UpsReading``)
    ups          the policy's UPS read (``read_ups``) and checked (``check_power``)

Nothing here is imported unless the policy has a ``power:`` section.
"""

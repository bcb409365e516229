"""greygeo: a greylisting-plus-geo SMTP policy daemon.

The package is layered: ``lookups`` supply facts (GeoIP country, the store),
``rules`` decide (conditions, rate limits, the engine that runs the policy),
``frontends`` do network IO (the SMTP listener and the relay to the backend).
Imports point one way: front ends import the engine, never the reverse.
"""

__version__ = "0.1.0"

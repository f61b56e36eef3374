"""The demo shop that ``meshctl up --demo`` runs: small services calling each other
through their sidecars, so balancing, breakers, limits and degradation can be watched."""

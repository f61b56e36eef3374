"""Load balancers: choose an endpoint of a cluster for one request.

``base`` holds the interface every policy implements; each policy has its own module.
``make_balancer(policy, ...)`` builds one by name from the cluster config.
"""

from meshproxy.balance.base import Balancer, PickContext
from meshproxy.balance.round_robin import RoundRobin

__all__ = ["Balancer", "PickContext", "RoundRobin"]

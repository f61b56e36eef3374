"""Load balancers: choose an endpoint of a cluster for one request.

``base`` holds the interface every policy implements and the shared candidate rule
(health, exclusion, panic threshold); each policy has its own module; ``config`` holds
the typed settings, ``factory.make_balancer`` builds a policy from them and
``hashing.request_hash_key`` computes the consistent-hash key of a request.
"""

from meshproxy.balance.base import Balancer, EndpointPool, PickContext
from meshproxy.balance.config import HashOn, LoadBalancerConfig, Policy
from meshproxy.balance.factory import make_balancer
from meshproxy.balance.hashing import request_hash_key
from meshproxy.balance.least_request import LeastRequest
from meshproxy.balance.maglev import Maglev
from meshproxy.balance.peak_ewma import PeakEwma
from meshproxy.balance.random_pick import Random, WeightedRandom
from meshproxy.balance.ring_hash import RingHash
from meshproxy.balance.round_robin import RoundRobin

__all__ = ["Balancer", "EndpointPool", "HashOn", "LeastRequest", "LoadBalancerConfig",
           "Maglev", "PeakEwma", "PickContext", "Policy", "Random", "RingHash", "RoundRobin",
           "WeightedRandom", "make_balancer", "request_hash_key"]

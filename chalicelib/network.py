"""Who a client is, for the per-client limits (SPEC §3): the source address API Gateway gives, as a
network. Standard library only: the API's request path imports it before anything heavy."""
from __future__ import annotations

import ipaddress


def client_network(client: str, v6_prefix: int) -> str:
    """A client as the per-client limits count it: an IPv4 address (also when IPv4-mapped), an IPv6 client by
    its network of `v6_prefix` bits (never narrower than `client` already is); anything else as given."""
    try:
        network = ipaddress.ip_network(client, strict=False)
    except ValueError:
        return client
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen == 128:
            return str(mapped)
        if network.prefixlen > v6_prefix:
            return str(network.supernet(new_prefix=v6_prefix))
    return str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)

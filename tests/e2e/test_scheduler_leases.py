"""Leader election on real Leases (hami_core_fw.k8s.lease) against the harness's kube-apiserver."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from harness import ControlPlane

from hami_core_fw.k8s import api as kapi
from hami_core_fw.k8s import lease

pytestmark = pytest.mark.controlplane


def test_campaign_one_winner_handover_on_release_and_follower_rule(
    control_plane: ControlPlane, namespace: str
) -> None:
    name = f"hami-{uuid.uuid4().hex[:6]}"

    async def main() -> None:
        kube = await kapi.Kube.connect(str(control_plane.kubeconfig))
        try:
            a = lease.LeaseCampaign(kube, namespace, name, "replica-a")
            b = lease.LeaseCampaign(kube, namespace, name, "replica-b")
            changes: list[tuple[str, bool]] = []
            a.add_listener(lambda leader: changes.append(("a", leader)))
            b.add_listener(lambda leader: changes.append(("b", leader)))
            assert await a.try_acquire_or_renew() is True
            assert await b.try_acquire_or_renew() is False
            assert await a.try_acquire_or_renew() is True  # renewal
            assert (a.is_leader, b.is_leader) == (True, False)
            # a follower whose identity prefixes the holder leads; others do not
            follower = lease.LeaseFollower(kube, namespace, name, "replica-a")
            other = lease.LeaseFollower(kube, namespace, name, "replica-b")
            await follower.check()
            await other.check()
            assert (follower.is_leader, other.is_leader) == (True, False)
            # releasing hands over at once (no wait for expiry)
            await a.release()
            assert a.is_leader is False
            assert await b.try_acquire_or_renew() is True
            await follower.check()
            await other.check()
            assert (follower.is_leader, other.is_leader) == (False, True)
            assert changes == [("a", True), ("a", False), ("b", True)]
            got = await kube.request("GET", lease.lease_path(namespace, name))
            assert got["spec"]["holderIdentity"] == "replica-b"
            assert got["spec"]["leaseTransitions"] == 1
            # a missing lease means nobody leads
            missing = lease.LeaseFollower(kube, namespace, "no-such-lease", "replica-a")
            await missing.check()
            assert missing.is_leader is False
        finally:
            await kube.close()

    asyncio.run(asyncio.wait_for(main(), timeout=30))

"""One rank's place in the plan, on one named `DeviceMesh` (built once per run, every rank at once).

The sample schedulers (`strategies/pp.py`, `dp.py`) see groups, not ranks: which group this rank belongs to, how
many groups there are, and which rank of a neighbouring group plays the same part. The model-level axes get
their sub-mesh (`layout.mesh["sp"]`) and never count ranks themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from vidpipe.parallel.comm import CommStats
from vidpipe.parallel.plan import ParallelPlan
from vidpipe.runtime.dist import DistContext


@dataclass(frozen=True)
class Layout:
    plan: ParallelPlan
    ctx: DistContext
    mesh: DeviceMesh
    comm: CommStats = field(default_factory=CommStats)  # what the cfg/sp collectives of this rank send

    @property
    def rank(self) -> int:
        return self.ctx.rank

    @property
    def group_index(self) -> int:
        """This rank's group: its pp stage, or its dp group."""
        return self.rank // self.plan.group_size

    @property
    def group_rank(self) -> int:
        return self.rank % self.plan.group_size

    @property
    def is_group_leader(self) -> bool:
        """Rank 0 of its group: the one that reports what the whole group did (a finished sample)."""
        return self.group_rank == 0

    def peer(self, group_index: int) -> int:
        """The rank that plays this rank's part in group `group_index` (hand-offs go peer to peer)."""
        return group_index * self.plan.group_size + self.group_rank

    def group_ranks(self, group_index: int) -> list[int]:
        start = group_index * self.plan.group_size
        return list(range(start, start + self.plan.group_size))

    def submesh(self, axis: str) -> DeviceMesh | None:
        """The 1-D mesh of `axis` through this rank, or None when the plan has no such axis (degree 1)."""
        names = self.mesh.mesh_dim_names or ()
        return self.mesh[axis] if axis in names else None

    def group_mesh(self) -> DeviceMesh | None:
        """All ranks of this rank's group as one 1-D mesh (what fsdp shards over), or None for a group of 1."""
        axes = [axis for axis in ("cfg", "sp", "fsdp") if self.submesh(axis) is not None]
        if not axes:
            return None
        if len(axes) == 1:
            return self.mesh[axes[0]]
        # NOTE: a private DeviceMesh method, as torchtitan uses it to shard over several mesh dimensions at once.
        return self.mesh[tuple(axes)]._flatten("group")


def build_layout(ctx: DistContext, plan: ParallelPlan) -> Layout:
    """Create the run's mesh (a collective: every rank calls it, in the same order)."""
    if plan.world_size != ctx.world_size:
        raise ValueError(f"plan {plan.name} needs {plan.world_size} ranks, the run has {ctx.world_size}")
    names, sizes = zip(*plan.mesh_dims(), strict=True)
    mesh = init_device_mesh(ctx.device.type, tuple(sizes), mesh_dim_names=tuple(names))
    return Layout(plan, ctx, mesh)

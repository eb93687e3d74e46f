"""A small, fast configuration of digits-v1 for trainer tests (2 groups of 4, T = 10)."""

FAST = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def run_records(path):
    from opgrpo_bench.results import read_records

    return read_records(path)


def comparable(records, drop=("wall_s", "start_time", "run_id", "device", "git_sha", "algorithm",
                              "algorithm_class", "config", "config_hash", "wall_s_to_target")):
    """Records without timing/identity fields (and without OP-GRPO's op/* keys)."""
    out = []
    for r in records:
        out.append({k: v for k, v in r.items() if k not in drop and not k.startswith("op/")})
    return out

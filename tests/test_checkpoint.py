"""Checkpoints: safetensors + JSON round trip, no pickle, damage detected, atomic replacement."""

import json
import struct

import pytest
import torch

from opgrpo_bench.checkpoint import CheckpointError, load_state, save_state


def nested_state():
    gen = torch.Generator().manual_seed(3)
    torch.randn(5, generator=gen)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-3, betas=(0.9, 0.99))
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    return {
        "state": {"step": 7, "wall_s": 1.25, "name": "x", "flag": True, "none": None},
        "params": [torch.arange(6, dtype=torch.float32).view(2, 3), torch.zeros(0)],
        "optimizer": opt.state_dict(),
        "gen": gen.get_state(),
        "scalar": torch.tensor(2.5),
        "bf16": torch.ones(2, dtype=torch.bfloat16),
    }


def test_round_trip_keeps_values_dtypes_and_int_keys(tmp_path):
    state = nested_state()
    save_state(tmp_path / "c.safetensors", state)
    back = load_state(tmp_path / "c.safetensors")
    assert back["state"] == state["state"]
    assert torch.equal(back["params"][0], state["params"][0]) and back["params"][1].shape == (0,)
    assert set(back["optimizer"]["state"]) == {0}  # int keys stay ints
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert back["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.99]
    assert back["bf16"].dtype == torch.bfloat16 and back["scalar"].item() == 2.5
    gen = torch.Generator()
    gen.set_state(back["gen"])
    ref = torch.Generator()
    ref.set_state(state["gen"])
    assert torch.equal(torch.randn(4, generator=gen), torch.randn(4, generator=ref))
    # the restored optimizer state loads into a fresh optimizer
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-3)
    opt.load_state_dict(back["optimizer"])


def test_the_file_is_a_safetensors_header_and_raw_buffers(tmp_path):
    save_state(tmp_path / "c.safetensors", nested_state())
    raw = (tmp_path / "c.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    assert "__metadata__" in header and b"\x80\x04" not in raw[:8 + n]  # no pickle protocol marker


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign"])
def test_damage_is_a_checkpoint_error(tmp_path, damage):
    path = tmp_path / "c.safetensors"
    save_state(path, nested_state())
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) - 7])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid safetensors file that is not ours
        from safetensors.torch import save_file

        save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(CheckpointError):
        load_state(path)


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import opgrpo_bench.checkpoint as mod

    path = tmp_path / "c.safetensors"
    save_state(path, {"a": torch.ones(2)})
    before = path.read_bytes()

    def fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mod, "save_file", fail)
    with pytest.raises(OSError):
        save_state(path, {"a": torch.zeros(2)})
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_unsupported_objects_are_refused(tmp_path):
    with pytest.raises(TypeError):
        save_state(tmp_path / "c.safetensors", {"f": lambda: 0})


def test_a_full_disk_in_safetensors_is_the_oserror_the_cli_reports(tmp_path, monkeypatch):
    """safetensors reports a full disk as its own error type; the CLI's one line for a full disk catches
    OSError(ENOSPC), so the checkpoint writer translates it (and leaves no temporary file)."""
    import errno

    import opgrpo_bench.checkpoint as ckpt
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(OSError) as err:
        ckpt.save_state(tmp_path / "c.safetensors", {"x": torch.zeros(2)})
    assert err.value.errno == errno.ENOSPC and "No space left" in str(err.value)
    assert list(tmp_path.iterdir()) == []

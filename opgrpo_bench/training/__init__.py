"""The parts the trainer (:mod:`opgrpo_bench.trainer`) is assembled from, one concern a module:

- :mod:`.components`: building a run's reward, backbone with adapters, optimizer, EMA and generators;
- :mod:`.rollout`: sampling an algorithm's plan into a scored rollout, block by block;
- :mod:`.update`: running the network calls of one optimizer step (data parallel, FSDP lockstep);
- :mod:`.lockstep`: the idle calls that keep FSDP ranks in step;
- :mod:`.state`: the run's counters and the checkpoint that resumes it exactly;
- :mod:`.metadata`: what a ``run_start`` record says about the run and the machine.
"""

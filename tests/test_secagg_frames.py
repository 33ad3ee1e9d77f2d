"""Every malformed, forged or out-of-stage SecAgg frame is refused with a reason (the
socket closes with it), changes nothing, and the round still commits exactly the mean of
the other volunteers' levels: the hostile volunteer counts as one more dropout."""

import asyncio

import numpy as np
import pytest

from webfl.core.protocol import CLOSE_POLICY, CLOSE_TRY_LATER, Message, encode
from webfl.server.engine import RunConfig
from webfl.server.secagg import SecAggSettings

from secagg_net import Net
from test_secagg_rounds import BODY


def arrays(msg: Message, *new) -> Message:
    return Message(msg.type, msg.fields, tuple(new))


def fields(msg: Message, **new) -> Message:
    return Message(msg.type, {**msg.fields, **new}, msg.arrays)


# (frame type, what the hostile volunteer sends instead, words of the server's reason)
CASES = [
    ("sa_keys", lambda m: [encode(arrays(m, m.arrays[0][:63]))], "64 bytes"),
    ("sa_keys", lambda m: [encode(arrays(m, np.concatenate([m.arrays[0][:32]] * 2)))], "repeats"),
    ("sa_keys", lambda m: [encode(arrays(m, m.arrays[0].view("<u4")))], "64 bytes"),
    ("sa_keys", lambda m: [encode(fields(m, session=m["session"] ^ 1))], "not the open one"),
    ("sa_keys", lambda m: [encode(m), encode(m)], "advertised its keys already"),
    ("sa_keys", lambda m: [encode(Message("sa_reveal", m.fields, ()))], "out of stage"),
    ("sa_keys", lambda m: [encode(Message("sa_inbox", m.fields, ()))], "a server's frame"),
    ("sa_shares", lambda m: [encode(arrays(m, m.arrays[0][1:], m.arrays[1][1:]))], "for each neighbour in the roster"),
    ("sa_shares", lambda m: [encode(arrays(m, m.arrays[0][::-1].copy(), m.arrays[1]))], "ascending"),
    ("sa_shares", lambda m: [encode(arrays(m, m.arrays[0] + 100, m.arrays[1]))], "below the cohort size"),
    ("sa_shares", lambda m: [encode(arrays(m, m.arrays[0], m.arrays[1][:, :-1].copy()))], "rows of 136 bytes"),
    ("sa_shares", lambda m: [encode(arrays(m, m.arrays[0]))], "carries 2 arrays"),
    ("sa_masked", lambda m: [encode(arrays(m, m.arrays[0][:-1]))], "bytes"),
    ("sa_masked", lambda m: [encode(fields(m, token="0" * 32))], "token"),
    ("sa_masked", lambda m: [encode(fields(m, round=99))], "not open"),
    ("sa_masked", lambda m: [encode(arrays(m, m.arrays[0].astype("<u2")))], "uint8 vector"),
    ("sa_masked", lambda m: [encode(m), encode(m)], "uploaded its masked update already"),
    ("sa_reveal", lambda m: [encode(arrays(m, *m.arrays[:2], m.arrays[0], m.arrays[1]))], "both shares"),
    ("sa_reveal", lambda m: [encode(arrays(m, m.arrays[0][1:], m.arrays[1][1:], *m.arrays[2:]))], "no other"),
    ("sa_reveal", lambda m: [encode(arrays(m, m.arrays[0], m.arrays[1][:, :40].copy(), *m.arrays[2:]))], "rows of 44 bytes"),
    ("sa_reveal", lambda m: [encode(m), encode(m)], "revealed its shares already"),
    ("sa_reveal", lambda m: [encode(Message("sa_keys", m.fields, ()))], "out of stage"),
]


@pytest.mark.parametrize(("kind", "change", "why"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_hostile_frame_is_refused_and_the_round_commits_the_others_exact_mean(tmp_path, monkeypatch, kind, change, why):
    net = Net(tmp_path, 8)
    before = net.engine.params.copy()
    net.tamper = {"v3": (kind, change)}
    asyncio.run(net.run(BODY, monkeypatch=monkeypatch))
    assert list(net.closed) == ["v3"] and why in net.closed["v3"], net.closed
    late = why in ("not the open one", "out of stage", "not open")
    assert net.codes["v3"] == (CLOSE_TRY_LATER if late else CLOSE_POLICY)
    assert net.engine.rejections["secagg"] == 1
    (record,) = net.engine.history
    # Refused at its reveal (or at a second upload), the hostile one's first upload is in the sum.
    folded = kind == "sa_reveal" or (kind == "sa_masked" and "already" in why)
    assert record.participants == len(net.uploaded) == (8 if folded else 7)
    params = SecAggSettings(clip=1.0, neighbors=6, threshold=4).for_round(8, before.size, 1.0, dp=False)
    total = np.sum([net.levels[v] for v in sorted(net.uploaded)], axis=0, dtype=np.uint64).astype(np.uint32)
    mean = (params.quantizer.decode_sum(total, len(net.uploaded)) / len(net.uploaded)).astype(np.float32)
    np.testing.assert_allclose(net.engine.params - before, mean, rtol=0, atol=1e-6)


def test_outsiders_and_a_run_without_secagg_are_refused(tmp_path):
    net = Net(tmp_path, 9)

    async def main():
        net.engine.start(RunConfig.from_json({**BODY, "clients_per_round": 8}))
        while not any(v.secagg_seat for v in net.volunteers.values()):
            await net.step()
            await asyncio.sleep(0.002)
        session = next(v.job.session for v in net.volunteers.values() if v.secagg_seat)
        outsider = next(name for name, v in net.volunteers.items() if v.secagg_seat is None)
        keys = Message("sa_keys", {"session": session}, (np.arange(64, dtype=np.uint8),))
        assert "not in secagg round 1's cohort" in (await net.engine.secagg(outsider, keys, 100)).reason
        await net.engine.stop()

    asyncio.run(main())
    plain = Net(tmp_path / "plain", 2)

    async def plain_run():
        keys = Message("sa_keys", {"session": 1}, (np.zeros(64, np.uint8),))
        assert "no run is in progress" in (await plain.engine.secagg("v0", keys, 100)).reason
        plain.engine.start(RunConfig.from_json({"clients_per_round": 2}))
        await asyncio.sleep(0.01)
        assert "does not use secure aggregation" in (await plain.engine.secagg("v0", keys, 100)).reason
        await plain.engine.stop()

    asyncio.run(plain_run())
    np.testing.assert_array_equal(plain.engine.params, Net(tmp_path / "fresh", 1).engine.params)

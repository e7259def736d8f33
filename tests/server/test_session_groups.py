"""Placement groups (CreateSessionRequest.group): a session's id begins with its group, which the SDK sends as
`x-ntm-group` for a cluster's proxy to place the group on one replica (ntm_serve/api/headers.py). A single server
takes groups as they come: packed messages may mix groups there (only a replica needs one group per message)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from helpers import Offline, bits

from ntm_serve.api.headers import GROUP_HEADER, MAX_GROUP_CHARS, SESSION_HEADER, group_of, group_problem, routing
from ntm_serve.client.sdk import NTMClient


def test_a_session_id_names_its_group_and_the_headers_follow() -> None:
    assert group_of("tick-A.Zm9vYmFyYmF6cXV4cXV1eA") == "tick-A" and group_of("Zm9vYmFyYmF6cXV4cXV1eA") == ""
    assert routing("g_1.abc") == ((SESSION_HEADER, "g_1.abc"), (GROUP_HEADER, "g_1"))
    assert routing("abc") == ((SESSION_HEADER, "abc"),) and routing(None) == () and routing("") == ()
    assert group_problem("") is None and group_problem("a" * MAX_GROUP_CHARS) is None
    for bad in ("a" * (MAX_GROUP_CHARS + 1), "has.dot", "space here", "é"):
        assert group_problem(bad) is not None, bad


def test_a_single_server_creates_imports_and_packs_grouped_sessions(client: NTMClient, offline: Offline,
                                                                    rng: np.random.Generator) -> None:
    a = client.create_session("copy", group="tick-A")
    assert a.session_id.startswith("tick-A.") and a.group == "tick-A"
    assert client.get_session(a.session_id).group == "tick-A"
    plain = client.create_session("copy")
    assert plain.group == "" and "." not in plain.session_id
    x = np.stack([bits(rng, 5), bits(rng, 5)])  # (E, T, I)
    out = client.step_packed([a.session_id, plain.session_id], x, expect_steps=[0, 0])  # groups may mix here
    for e in range(2):
        np.testing.assert_array_equal(out.outputs[e], offline.run(x[e])["outputs"])
    copied = client.import_session(client.export_session(a.session_id), group="tick-B")
    assert copied.session_id.startswith("tick-B.") and copied.group == "tick-B" and copied.steps == 5
    for sid in (a.session_id, plain.session_id, copied.session_id):
        client.delete_session(sid)


@pytest.mark.parametrize("group", ["x" * (MAX_GROUP_CHARS + 1), "a.b", "tick A"])
def test_a_bad_group_is_refused(client: NTMClient, group: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.create_session("copy", group=group)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "group must be 1 to 64" in err.value.details()

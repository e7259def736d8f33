"""How far back a lost answer can be asked for again: one number shared by the server and the client.

In a cluster a step counts once its commit is in the store, and its answer can still be lost on the way back (a
replica killed, a stream cut, or a commit whose reply was lost and that the store client sent again). The store
keeps the answers of each session's last REPLAY_DEPTH committed requests, so a request sent again with its
`request_id` and `expect_steps` is answered again from that record rather than refused. A resumable client
(`NTMClient.stream_session(..., start_steps=...)`, `stream_packed_sessions`) therefore keeps at most
REPLAY_DEPTH requests unanswered at a time: every one it may have to send again is still on record.
"""

from __future__ import annotations

REPLAY_DEPTH = 8

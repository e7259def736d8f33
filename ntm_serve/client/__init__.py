"""The client SDK: what a client application installs (`pip install ntm-serve`: grpcio, protobuf, numpy).

    from ntm_serve.client import NTMClient
"""

from ntm_serve.client.retry import DEFAULT_RETRY, RetryPolicy, RetryStats
from ntm_serve.client.sdk import (
    NTMClient,
    PackedOutput,
    PackedStepError,
    SessionInfo,
    SessionStateData,
    StepError,
    StepOutput,
)

__all__ = ["DEFAULT_RETRY", "NTMClient", "PackedOutput", "PackedStepError", "RetryPolicy", "RetryStats",
           "SessionInfo", "SessionStateData", "StepError", "StepOutput"]

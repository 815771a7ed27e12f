"""`xsell serve` whose ranking costs nothing: the ceiling of a Recommend call (issue 6).

Every worker answers each request with the result of the first request it ranked (a
real RankResult from the bundle: the same number of items, reasons and sources as a
served answer), after the request's validation. What is left per call is everything
but the ranking: gRPC, the interceptor (admission, metrics), protobuf <-> RankRequest /
RankResult and the response's serialisation. `bench_load.py --canned` runs this in
place of `xsell serve`, so that Recommend QPS / health QPS of this server is the best
ratio any ranking code could reach on this host; the gap to the real server is the
ranking's share.

Usage (what bench_load.py does): python benchmarks/canned_serve.py serve --bundle B ...

The patch is applied at import: a spawned worker imports this file again (as
`__mp_main__`), so the workers get it too.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from xsell.ranking.ranker import Ranker

_real_rank = Ranker.rank


def _canned_rank(self: Ranker, request):
    request.validated()  # a bad request is refused as by the real ranker
    canned = self.__dict__.get("_canned_result")
    if canned is None:
        canned = _real_rank(self, request)
        self.__dict__["_canned_result"] = canned
    return replace(canned, timings={"retrieval": 0.0, "features": 0.0, "model": 0.0, "rules": 0.0})


Ranker.rank = _canned_rank

if __name__ == "__main__":
    from xsell.cli import main

    sys.exit(main(sys.argv[1:]))

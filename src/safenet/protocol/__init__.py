"""The two-party protocol (docs/protocol.md), bottom up: share arithmetic (:mod:`.arith`),
framed messages over sockets and TLS (:mod:`.transport`, :mod:`.tls`), one layer kind per
module (:mod:`.linear` HE conv/linear, :mod:`.garbled` with :mod:`.relu` and :mod:`.maxpool`
garbled layers, :mod:`.poly` polynomial channels), the statistical budget
(:mod:`.statistical`), the engine that walks a plan offline then online (:mod:`.engine`)
through each op kind's steps (:mod:`.layers`, one handler class per kind), one
connection's session (:mod:`.session`), preprocessing storage (:mod:`.bank`), per-party
profiles (:mod:`.profile`) and op-by-op checks (:mod:`.verify`)."""

"""The two-party protocol (docs/protocol.md), bottom up, over :mod:`safenet.channel`: share
arithmetic (:mod:`.arith`), the opening handshake (:mod:`.handshake`), one layer kind per
module (:mod:`.linear` HE conv/linear, :mod:`.garbled` with :mod:`.relu_layer` and
:mod:`.maxpool_layer` garbled layers, :mod:`.poly` polynomial channels), the statistical budget
(:mod:`.statistical`), the engine that walks a plan offline then online (:mod:`.engine`)
through each op kind's steps (:mod:`.layers`, one handler class per kind), one
connection's session (:mod:`.session`), preprocessing storage (:mod:`.bank`), per-party
profiles (:mod:`.profile`) and op-by-op checks (:mod:`.verify`)."""

"""Pictures: the ones the explorer redraws on every action drawn as arrays without matplotlib (`heatmap`,
`bars`, `overlays`, on `drawing`'s primitives) and the matplotlib charts of saved reports (`plots`).

May import: hi_core.base, hi_core.method.
"""

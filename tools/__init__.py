"""What a reader runs against the chapters: client, attacks, stall, bench, baseline, lineage.

Never imported by a chapter: imports point from here to ``common``, never back.
"""

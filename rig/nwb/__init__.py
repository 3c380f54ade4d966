"""NWB export of sessions (`rig export-nwb`): one module per part of the file.

- `source`: what a session folder holds, read defensively (every optional part present or not);
- `metadata`: subject, session description and clock, weight and water, DANDI naming;
- `behaviour`: trials table, Bpod states, events and output actions, licks per side;
- `imaging`: planes, ScanImage files linked, motion, ROIs, traces;
- `decoding`: decoder outputs, coding directions, closed-loop decisions;
- `writer`: the file, a session or every session of a subject not yet exported.
"""

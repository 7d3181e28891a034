#!/bin/sh
# Nextcloud's cron entrypoint, stand-in: a heartbeat row in the database's cron_runs table every
# ILOT_STANDIN_CRON_EVERY seconds (5 by default); waits for the database when it is not up.
exec python3 /usr/local/lib/ilot-standin/standin.py cron

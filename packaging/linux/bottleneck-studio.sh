#!/bin/sh
# /usr/bin/bottleneck-studio: the installed app lives in /opt/bottleneck-studio.
exec /opt/bottleneck-studio/bottleneck-studio "$@"

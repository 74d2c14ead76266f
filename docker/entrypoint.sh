#!/bin/sh
# Secrets arrive as files (compose `secrets:` under /run/secrets): for every variable NAME_FILE
# that names a readable file, export NAME with the file's content, then run the command.
set -eu
for var in $(env | sed -n 's/^\([A-Z0-9_]*\)_FILE=.*/\1/p'); do
    file=$(printenv "${var}_FILE")
    if [ -r "$file" ]; then
        value=$(cat "$file")
        export "$var=$value"
    fi
done
exec "$@"

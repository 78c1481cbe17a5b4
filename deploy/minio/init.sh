#!/bin/sh
# One-shot MinIO set-up for docker-compose.yml (run by the `minio-init` service with the
# minio/minio image, which ships `mc`): the bucket, and a medhash user whose policy allows
# only that bucket. Idempotent, so it runs at every `docker compose up`.
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${MEDHASH_S3_ACCESS_KEY:?}" "${MEDHASH_S3_SECRET_KEY:?}" "${MEDHASH_S3_BUCKET:?}"

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$MEDHASH_S3_BUCKET"

# The policy names the bucket; render it for the configured one.
sed "s/@BUCKET@/$MEDHASH_S3_BUCKET/g" /deploy/minio/medhash-policy.json > /tmp/medhash-policy.json
mc admin policy create local medhash /tmp/medhash-policy.json
# `user add` on an existing user updates its secret, so a rotated key in .env takes effect.
mc admin user add local "$MEDHASH_S3_ACCESS_KEY" "$MEDHASH_S3_SECRET_KEY"
# Attaching an already attached policy is an error in mc; it changes nothing, so ignore it.
mc admin policy attach local medhash --user "$MEDHASH_S3_ACCESS_KEY" 2>/dev/null || true
mc admin policy entities local --user "$MEDHASH_S3_ACCESS_KEY"
echo "minio-init: bucket $MEDHASH_S3_BUCKET and user $MEDHASH_S3_ACCESS_KEY ready"

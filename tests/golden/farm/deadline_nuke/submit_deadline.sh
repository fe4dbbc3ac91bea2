#!/bin/sh
# Submit the RNA build job, then the render job that depends on it (Deadline 10).
# deadlinecommand prints a line JobID=<id> for a submitted job; that id replaces the
# placeholder <RNA_BUILD_JOB_ID> in render_job_info.job. Set DEADLINECOMMAND to override the command.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
deadline=${DEADLINECOMMAND:-deadlinecommand}
out=$("$deadline" "$here/build_job_info.job" "$here/build_plugin_info.job")
printf '%s\n' "$out"
id=$(printf '%s\n' "$out" | sed -n 's/^JobID=//p' | tr -d '\r' | head -n 1)
if [ -z "$id" ]; then
    echo "submit_deadline.sh: no JobID= line from $deadline; build job not submitted" >&2
    exit 1
fi
sed "s/<RNA_BUILD_JOB_ID>/$id/" "$here/render_job_info.job" > "$here/render_job_info.submitted.job"
"$deadline" "$here/render_job_info.submitted.job" "$here/render_plugin_info.job"

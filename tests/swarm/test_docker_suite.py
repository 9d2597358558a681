"""tests/docker's behaviour tests, run again on SwarmRuntime (issue 19).

The tests are imported, not copied: pytest collects them here with this
directory's fixtures of the same names (conftest.py), so ``make_runtime`` is a
``SwarmRuntime`` on the three-node cluster, ``make_config`` build mode only,
``oci_runtime`` runc.

Run here, from tests/docker:
- test_docker_runtime.py: lifecycle (echo, env, keep-alive and attach, a missing
  image, a failed or cancelled start, connect and close in two tasks, six
  concurrent starts) and limits (fork bomb, memory bomb, every action kind);
- test_cancel_docker.py: cancelling run() interrupts the command and the IPython cell;
- test_session_owner.py: one owner per session id in this process, attach after close;
- test_fidelity.py: the OpenHands texts (editor parameters, hard timeout, long
  output, several commands);
- test_attacks.py: /proc snooping and signalling the server, file actions as the
  agent, killing the server, key theft, taking the server's port;
- test_containment.py: fork and memory bombs next to a responsive neighbour.

Docker-only, and why:
- what they check is the local engine's: container inspect/exec, names, run
  directories, images and labels, gc of containers (test_ps_and_gc_reap_orphans,
  test_privileges_seccomp_and_init, test_setuid_binaries_do_not_escalate — its
  setuid file is made with ``docker exec`` —, test_nothing_on_the_servers_path_is_
  writable_by_the_agent, test_storage_opt_size_depends_on_the_driver,
  test_container_killed_mid_action — test_swarm_runtime.py kills a task instead —,
  test_docker_client_is_reachable, test_plugins_docker.py, test_image_build.py);
- Swarm refuses their config: workspace_dir (test_isolation_basics,
  test_root_owned_workspace_gets_write_access_not_root,
  test_no_setuid_or_device_file_reaches_the_host), network="none" or channel="unix"
  (test_network_none_has_loopback_only, test_unix_channel_..., test_agent_cannot_
  hijack_the_unix_socket, test_other_local_users_cannot_reach_the_channel),
  read_only_root (test_read_only_root, test_disk_filler_..., test_a_failed_start_
  removes_what_it_made_even_if_kept_alive), auto_restart
  (test_planted_modules_are_never_imported), runtime_mode="mount" (the mount
  parameter of every test, test_any_image.py, test_bundle_docker.py), snapshots
  (test_snapshot_docker.py, test_fork_docker.py, test_pool_docker.py);
- they make their DockerRuntime themselves: in a child process
  (test_a_session_owned_by_another_process_is_refused), in replay_file and the
  CLI (test_replay_docker.py, test_cli_docker.py, test_readme_docker.py,
  test_examples_docker.py), with a plugin image per runtime kind
  (test_agent_skills_file_editor_in_ipython);
- faults of the local engine (test_faults.py, test_crash_safety.py).
"""

from __future__ import annotations

import pytest
from test_attacks import (
    test_agent_cannot_kill_the_server,
    test_agent_cannot_take_the_servers_tcp_port,
    test_agent_is_unprivileged_and_cannot_signal_trace_or_read_the_server,
    test_file_actions_act_as_the_agent_not_as_the_server,
    test_session_key_never_reaches_the_agent,
)
from test_cancel_docker import (
    test_cancelling_run_interrupts_the_command,
    test_cancelling_run_interrupts_the_ipython_cell,
)
from test_containment import test_bombs_leave_the_host_and_a_neighbour_responsive
from test_docker_runtime import (
    test_a_cancelled_start_removes_what_it_made,
    test_config_env_and_limits_reach_the_container,
    test_connect_and_close_in_different_tasks,
    test_echo_and_container_shape,
    test_every_action_kind_runs_under_each_runtime,
    test_fork_bomb_is_contained,
    test_keep_alive_then_attach_keeps_state,
    test_memory_bomb_is_killed_and_the_server_survives,
    test_missing_image_fails_fast_naming_it,
    test_six_sandboxes_start_concurrently,
    test_start_failure_reports_logs_and_removes_container,
)
from test_fidelity import (
    test_hard_timeout_note_reads_like_openhands,
    test_long_output_keeps_its_last_ten_thousand_lines,
    test_missing_editor_parameters_get_openhands_texts,
    test_several_commands_are_refused_and_one_compound_command_runs,
    test_several_commands_run_where_the_sandbox_allows_them,
)
from test_session_owner import (
    test_a_kept_alive_sandbox_whose_owner_closed_it_can_be_attached,
    test_a_second_runtime_in_this_process_is_refused,
)

pytestmark = [
    pytest.mark.docker,
    pytest.mark.swarm,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(900),
]

__all__ = [
    "test_a_cancelled_start_removes_what_it_made",
    "test_a_kept_alive_sandbox_whose_owner_closed_it_can_be_attached",
    "test_a_second_runtime_in_this_process_is_refused",
    "test_agent_cannot_kill_the_server",
    "test_agent_cannot_take_the_servers_tcp_port",
    "test_agent_is_unprivileged_and_cannot_signal_trace_or_read_the_server",
    "test_bombs_leave_the_host_and_a_neighbour_responsive",
    "test_cancelling_run_interrupts_the_command",
    "test_cancelling_run_interrupts_the_ipython_cell",
    "test_config_env_and_limits_reach_the_container",
    "test_connect_and_close_in_different_tasks",
    "test_echo_and_container_shape",
    "test_every_action_kind_runs_under_each_runtime",
    "test_file_actions_act_as_the_agent_not_as_the_server",
    "test_fork_bomb_is_contained",
    "test_hard_timeout_note_reads_like_openhands",
    "test_keep_alive_then_attach_keeps_state",
    "test_long_output_keeps_its_last_ten_thousand_lines",
    "test_memory_bomb_is_killed_and_the_server_survives",
    "test_missing_editor_parameters_get_openhands_texts",
    "test_missing_image_fails_fast_naming_it",
    "test_session_key_never_reaches_the_agent",
    "test_several_commands_are_refused_and_one_compound_command_runs",
    "test_several_commands_run_where_the_sandbox_allows_them",
    "test_six_sandboxes_start_concurrently",
    "test_start_failure_reports_logs_and_removes_container",
]

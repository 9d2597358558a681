"""The sandbox user's account files: re-numbered, or added where the image has no such user."""

from __future__ import annotations

from events.accounts import first_free_id, renumbered, with_account, with_root_account

PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
GROUP = "root:x:0:\nalice:x:1000:\nstaff:x:1001:\n"


def test_the_first_free_id_skips_uids_and_gids_in_use() -> None:
    assert first_free_id(PASSWD, GROUP) == 1002
    assert first_free_id("", "") == 1000
    assert first_free_id(PASSWD, GROUP, start=5000) == 5000


def test_an_account_is_added_to_files_that_lack_it() -> None:
    passwd, group = with_account(
        PASSWD, GROUP, "openhands", 4242, home="/home/openhands", shell="/b/bash"
    )
    assert passwd == PASSWD + "openhands:x:4242:4242::/home/openhands:/b/bash\n"
    assert group == GROUP + "openhands:x:4242:\n"


def test_no_files_at_all_get_root_first() -> None:
    passwd, group = with_account("", "", "openhands", 1000, home="/home/openhands", shell="/bin/sh")
    assert passwd.splitlines() == [
        "root:x:0:0:root:/root:/bin/sh",
        "openhands:x:1000:1000::/home/openhands:/bin/sh",
    ]
    assert group.splitlines() == ["root:x:0:", "openhands:x:1000:"]


def test_a_file_without_a_final_newline_and_a_gid_in_use() -> None:
    passwd, group = with_account(
        PASSWD.rstrip("\n"), GROUP, "openhands", 1001, home="/h", shell="/s"
    )
    assert passwd.splitlines()[-1] == "openhands:x:1001:1001::/h:/s"
    assert group == GROUP  # gid 1001 is staff's: no second group with it


def test_an_added_account_can_be_renumbered() -> None:
    passwd, _ = with_account("", "", "openhands", 1000, home="/h", shell="/s")
    assert "openhands:x:7:7::/h:/s" in renumbered(passwd, "openhands", 7, fields=(2, 3))


def test_root_is_put_first_where_missing_and_kept_where_present() -> None:
    passwd, group = with_root_account("", "", shell="/b/bash")
    assert (passwd, group) == ("root:x:0:0:root:/root:/b/bash\n", "root:x:0:\n")
    passwd, group = with_root_account("app:x:1:1::/app:/bin/sh\n", "app:x:1:\n", shell="/b/bash")
    assert passwd.splitlines()[0] == "root:x:0:0:root:/root:/b/bash"
    assert group.splitlines() == ["root:x:0:", "app:x:1:"]
    assert with_root_account(PASSWD, GROUP, shell="/b/bash") == (PASSWD, GROUP)

"""The greygeo command as admins and scripts use it."""

import os
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import _maxminddb_geolite2
import pytest

from greygeo.cli import main
from greygeo.lookups.store import load_migrations
from tests.harness import RECIPE_RULES
from tests.postfix import free_port, wait_for_port

GEOLITE2 = Path(_maxminddb_geolite2.__file__).parent / "GeoLite2-City.mmdb"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def recipe_config(tmp_path: Path) -> Path:
    """The recipe's rules with the real GeoLite2 database of maxminddb-geolite2."""
    path = tmp_path / "greygeo.toml"
    path.write_text(
        f'[geoip]\ndatabase = "{GEOLITE2}"\n'
        f'[store]\npath = "{tmp_path / "state.sqlite3"}"\n' + RECIPE_RULES
    )
    return path


def test_check_japanese_client_is_accepted_by_country(recipe_config, capsys):
    code = main(
        [
            "check",
            "--config",
            str(recipe_config),
            "--client",
            "133.242.186.90",
            "--helo",
            "localhost",
            "--sender",
            "foo@example.com",
            "--recipient",
            "bar@example.com",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "country JP" in out
    assert "OK_COUNTRY_CODE  match: accept" in out
    assert "decision: accept rule=OK_COUNTRY_CODE" in out


def test_check_localhost_helo_from_abroad_is_refused(recipe_config, capsys):
    code = main(
        [
            "check",
            "--config",
            str(recipe_config),
            "--client",
            "20.1.1.1",
            "--helo",
            "localhost",
            "--recipient",
            "bar@example.com",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "country US" in out
    assert "OK_COUNTRY_CODE     no match: country US not in JP" in out
    assert (
        "decision: defer rule=REJECT_HELO_DOMAIN "
        "reply=421 4.7.0 Please Try Again Later."
    ) in out


def test_check_uses_up_no_limit(recipe_config, capsys):
    """check never changes state: the limit passes however often it runs."""
    argv = [
        "check",
        "--config",
        str(recipe_config),
        "--client",
        "20.1.1.1",
        "--helo",
        "mail.example.com",
        "--recipient",
        "bar@example.com",
    ]
    assert [main(argv) for _ in range(3)] == [0, 0, 0]
    assert "LIMIT_TO_DOMAIN" in capsys.readouterr().out


def test_check_with_a_bad_client_address_exits_2(recipe_config, capsys):
    code = main(["check", "--config", str(recipe_config), "--client", "999.1.1.1"])
    assert code == 2
    assert "not an IP address: '999.1.1.1'" in capsys.readouterr().err


def test_bad_config_exits_2_naming_file_and_key(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[proxy]\nlisten = ["127.0.0.1:2525"]\nlissten = 1\n')
    assert main(["check", "--config", str(path), "--client", "1.2.3.4"]) == 2
    assert capsys.readouterr().err == f"greygeo: {path}: proxy.lissten: unknown key\n"


def test_missing_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["check"])
    assert exit_info.value.code == 2


def test_migrate_creates_the_store(recipe_config, tmp_path, capsys):
    assert main(["migrate", "--config", str(recipe_config)]) == 0
    latest = len(load_migrations())
    assert f"schema version {latest}" in capsys.readouterr().out
    assert (tmp_path / "state.sqlite3").exists()


def test_serve_quick_start_config_delivers_to_the_maildir(tmp_path):
    """The README's first command: greygeo serve on contrib/quickstart.toml,
    from a working directory, as a real process stopped with SIGTERM."""
    config = (ROOT / "contrib" / "quickstart.toml").read_text()
    port = free_port()
    (tmp_path / "quickstart.toml").write_text(
        config.replace("127.0.0.1:2525", f"127.0.0.1:{port}")
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "greygeo", "serve", "--config", "quickstart.toml"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port("127.0.0.1", port)
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo("mail.example.org")
            client.sendmail(
                "foo@example.org",
                ["bar@example.com"],
                b"Subject: quick start\r\n\r\nHello.\r\n",
            )
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
    assert process.returncode == 0
    assert len(os.listdir(tmp_path / "greygeo-mail" / "new")) == 1
    assert (tmp_path / "greygeo.sqlite3").exists()
    assert "msg=started listen=127.0.0.1:" in log
    assert "msg=decision" in log and "rule=LIMIT_TO_DOMAIN" not in log
    assert "Traceback" not in log


def test_serve_with_an_unusable_geoip_file_exits_2(tmp_path):
    path = tmp_path / "greygeo.toml"
    (tmp_path / "broken.mmdb").write_bytes(b"not a database")
    path.write_text(
        f'[geoip]\ndatabase = "{tmp_path / "broken.mmdb"}"\n'
        f'[backend]\naddress = "maildir:{tmp_path / "mail"}"\n'
        f'[store]\npath = "{tmp_path / "s.sqlite3"}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "greygeo", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("greygeo: cannot open GeoIP database")
    assert "Traceback" not in result.stderr


def test_serve_with_a_bad_tls_key_exits_2_and_does_not_hang(tmp_path):
    path = tmp_path / "greygeo.toml"
    path.write_text(
        f'[proxy]\ntls_cert = "{tmp_path}/none.pem"\ntls_key = "{tmp_path}/none.pem"\n'
        f'[backend]\naddress = "maildir:{tmp_path / "mail"}"\n'
        f'[store]\npath = "{tmp_path / "s.sqlite3"}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "greygeo", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("greygeo: cannot load TLS certificate")


def test_serve_accepts_an_empty_existing_maildir_folder(tmp_path):
    """An admin who made the folder first still gets deliveries; a file in
    its place stops start-up with a clear error."""
    (tmp_path / "mail").mkdir()
    (tmp_path / "afile").write_text("")
    for target, code in (("mail", None), ("afile", 2)):
        path = tmp_path / "greygeo.toml"
        path.write_text(
            f'[proxy]\nlisten = ["127.0.0.1:{free_port()}"]\n'
            f'[backend]\naddress = "maildir:{tmp_path / target}"\n'
            f'[store]\npath = "{tmp_path / "s.sqlite3"}"\n'
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "greygeo", "serve", "--config", str(path)],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            returncode = process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            returncode = None
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        assert returncode == code
    assert {p.name for p in (tmp_path / "mail").iterdir()} == {"tmp", "new", "cur"}

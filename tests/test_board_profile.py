"""Board profiles: the shipped ones, users' own, and mistakes reported by field."""

from __future__ import annotations

import pytest

from clirunner import run_cli
from pledgeforge.boards import profile as profiles
from pledgeforge.boards.profile import ProfileError, load_profile, profile_names
from pledgeforge.errors import FileAccessError
from pledgeforge.hsm.signer import KeyAlgorithm


def test_shipped_profiles_cover_the_three_kinds_of_board():
    profiles = {name: load_profile(name) for name in profile_names()}
    kinds = {(p.keystore.type, p.keystore.algorithm) for p in profiles.values()}
    assert ("tpm", KeyAlgorithm.EC_P256) in kinds
    assert ("pkcs11", KeyAlgorithm.EC_P256) in kinds
    assert any(alg is KeyAlgorithm.RSA_2048 for _, alg in kinds)
    for profile in profiles.values():
        assert profile.console.line_ending == "\r\n"
        # Lab tools give up on a console silent for 2 s: the countdown ticks every second.
        assert 0 < profile.boot.autoboot_seconds <= 5
        assert profile.registrar.cloud_url.startswith("https://")
    gateway = profiles["gateway-tpm"]
    assert gateway.console.login and gateway.console.prompt == "root@gateway:~# "
    # Transcripts are on by default and bounded: 4 files of 1 MiB.
    assert (gateway.console.transcript_files, gateway.console.transcript_kib) == (4, 1024)


def write_profile(tmp_path, old: str, new: str):
    text = load_profile("mcu-se").path.read_text()
    assert old in text
    path = tmp_path / "mine.toml"
    path.write_text(text.replace(old, new))
    return path


def test_a_users_profile_is_loaded_by_path(tmp_path):
    path = write_profile(tmp_path, 'name = "mcu-se"', 'name = "my-board"')
    profile = load_profile(path)
    assert profile.name == "my-board" and profile.path == path.resolve()
    key = tmp_path / "keys" / "fw.pem"
    profile = load_profile(write_profile(tmp_path, "version = \"1.0.0\"",
                                         'version = "1.0.0"\nverify_key = "keys/fw.pem"'))
    assert profile.image.verify_key == key          # relative to the profile file


@pytest.mark.parametrize("old, new, message", [
    ("baud = 115200", 'baud = "fast"', "[console] baud must be an integer, got a string"),
    ('algorithm = "ec-p256"', 'algorithm = "ec-p521"', "[keystore] algorithm unknown key algorithm 'ec-p521'"),
    ('type = "pkcs11"', 'type = "yubikey"', "[keystore] type must be one of tpm, pkcs11, got 'yubikey'"),
    ('prompt = "uart:~$ "', 'promt = "uart:~$ "', "[console] promt is not a known field"),
    ("autoboot_seconds = 1", "autoboot_seconds = -1", "[boot] autoboot_seconds must be between 0.0 and 60.0"),
    ("motd = \"\"", 'motd = "{nosuch}"', "[boot] motd has a bad placeholder"),
    ("slots = 2", "slots = 3", "[image] slots must be between 1 and 2, got 3"),
    ("baud = 115200", "baud = 115200\ntranscript_kib = 4",
     "[console] transcript_kib must be between 16 and 1048576, got 4"),
    ("baud = 115200", "baud = 115200\ntranscript_files = -1",
     "[console] transcript_files must be between 0 and 100, got -1"),
    ('cloud_url = "https://', 'cloud_url = "http://', "[registrar] cloud_url 'http://"),
    ("[flash]", "[flashh]", "unknown table [flashh]"),
    ('model = "PledgeForge MC-20 Sensor Node"\n', "", "[board] model is missing"),
])
def test_mistakes_name_the_table_and_field(tmp_path, old, new, message):
    path = write_profile(tmp_path, old, new)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ProfileError, match="no profile named 'nosuch'; shipped profiles: gateway-tpm"):
        load_profile("nosuch")
    with pytest.raises(FileAccessError, match="does not exist"):
        load_profile(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[board\nname=")
    with pytest.raises(ProfileError, match="is not valid TOML"):
        load_profile(bad)


def test_cli_lists_profiles():
    result = run_cli("board", "profiles")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.decode().splitlines()]
    assert names == profile_names()


@pytest.mark.parametrize("name", profile_names())
def test_a_profile_written_with_other_timings_reads_back_as_written(name, tmp_path):
    shipped = load_profile(name)
    quick = profiles.write_profile(shipped.with_timings(autoboot_seconds=0, firmware_seconds=0), tmp_path / "q.toml")
    assert load_profile(quick.path) == quick
    assert (quick.boot.autoboot_seconds, quick.boot.firmware_seconds) == (0.0, 0.0)
    assert quick.boot.bootloader_banner == shipped.boot.bootloader_banner and quick.keystore == shipped.keystore

"""``callgate test``: connectivity expectations kept beside the policies, checked in CI."""

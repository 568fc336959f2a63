"""Tests of the built distribution: the wheel installed into fresh virtualenvs, the docs site."""
